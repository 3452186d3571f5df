from xdai.cli import main

main()
