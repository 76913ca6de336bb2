from grefel.cli import main

main()
