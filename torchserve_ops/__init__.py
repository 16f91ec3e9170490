"""Talking to a running TorchServe: the HTTP client and the bulk catalogue classifier.

Beside the core (`galaxy_morph`: specs, transforms, models, ensemble rules, imaging, and the
astronomers' data I/O: FITS, catalogues, survey cutouts), which knows nothing of TorchServe and is
what the model archives ship, this package knows nothing of torch:

    torchserve_ops.client   TorchServeClient: keys, token renewal, readiness, every API call
    torchserve_ops.bulk     python -m torchserve_ops.bulk --input DIR_OR_H5 --out catalog.csv
"""
