from meterline.cli import main

main()
