from diffuse.cli import main

main()
