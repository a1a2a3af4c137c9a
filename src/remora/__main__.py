from remora.cli.main import main

main()
