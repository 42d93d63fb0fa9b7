"""What a run measures, streamed batch by batch (nothing kept per sample).

Following one FID run, top down: suites.py (name -> suite) -> the backend, one module each:
nfebench.py (metrics=fid), torch_fidelity.py (metrics=fid_is), clean_fid.py (metrics=clean_fid)
-> fid.py (the one pass over the samples all three share) -> references.py (where the reference
statistics come from, their cache and checksum) -> streaming.py (moments, Inception-Score sums,
the hashed feature subset). Beside them: features.py (nfebench's extractors), frechet.py, and the
suites for analytic and digit models, exact.py and digits_fd.py.
"""
