from torchslim.cli import main

main()
