"""Reading and writing images and files: DICOM, NIfTI, PNG/JPEG, npz; atomic writes."""
