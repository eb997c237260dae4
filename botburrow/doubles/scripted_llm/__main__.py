import sys

from botburrow.doubles.scripted_llm.cli import main

sys.exit(main(sys.argv[1:]))
