from bertpretrain.cli import main

main()
