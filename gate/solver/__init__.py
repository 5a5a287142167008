"""Eigenvalues of weight matrices and the power-law fit of their tails: Gram products, the LAPACK
solver, the precision each solve needs, and the vectorised fit."""
