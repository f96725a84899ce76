"""Images in and out: decoding any common file or array (images), colour
preservation (color), 16-bit PNG and TIFF output (png16, tiff16)."""
