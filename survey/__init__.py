"""Survey I/O: sky positions, Legacy Surveys cutouts, the inputs to classify and the catalogue
tables written from the answers. Shared by the HTTP bulk path (torchserve_ops.bulk) and the Ray path
(prediction); it needs neither TorchServe nor torch.

    survey.positions   tables of ra/dec (csv, ecsv, FITS, VOTable) -> Position rows
    survey.cutouts     Position -> cutout bytes from the Legacy Surveys service (cached, polite)
    survey.inputs      folder / HDF5 / positions -> lazy (id, load) items
    survey.rows        the CSV catalogue: columns, rows, resume, the writer's lock
    survey.catalog     CSV catalogue -> FITS / VOTable / ECSV with units and descriptions
"""
