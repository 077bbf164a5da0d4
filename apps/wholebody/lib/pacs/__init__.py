"""The hospital set-up: a DICOMweb PACS as datastore, DICOM SEG written with highdicom, and OHIF's proxy to the PACS."""
