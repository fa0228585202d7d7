"""medsight: deep learning for medical image analysis, from DICOM in to an audited result out."""

__version__ = "0.1.0"
