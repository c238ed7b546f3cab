"""Reading a hospital's site folder: DICOM decoding, the decoded-image cache, the data report."""
