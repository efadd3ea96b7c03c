"""Data in and kept: the HDF5 store, image decoding, ingesting the released IN-9, extracting foregrounds with
GrabCut, the background variants, synthetic stores, and verification."""
