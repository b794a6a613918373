"""`python -m utils.jittor_doctor`: report on, patch or restore the installed Jittor."""
import sys

from utils.jittor_doctor import main

sys.exit(main())
