from dsctl.cli.app import main

main()
