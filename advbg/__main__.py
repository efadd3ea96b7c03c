"""``python -m advbg`` — also the torchrun entry: ``torchrun --nproc-per-node N -m advbg search ...``.

Every process runs the same command; ``advbg.search.distributed`` joins torchrun's process group when the search
starts (WORLD_SIZE > 1), so nothing here differs between one process and many.
"""
from advbg.cli import main

main()
