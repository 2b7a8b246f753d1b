import sys

from llcuda_mpi.cli import main

sys.exit(main())
