import sys

from botburrow.services.scripted_llm.cli import main

sys.exit(main(sys.argv[1:]))
