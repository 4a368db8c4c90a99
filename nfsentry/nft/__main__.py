from nfsentry.nft.client import main

raise SystemExit(main())
