"""Which tensors are layer weight matrices, and how each becomes the matrices whose spectra are analysed."""
