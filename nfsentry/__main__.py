from nfsentry.cli.app import main

main()
