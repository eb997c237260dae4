from botburrow.cli import main

main()
