from nfsentry.cli import main

main()
