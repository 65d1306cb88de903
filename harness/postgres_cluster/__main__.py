import sys

from harness.postgres_cluster.cli import main

sys.exit(main())
