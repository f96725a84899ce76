"""The command line (cli, with its checks in request), batches of images (batch),
video frames (video) and the live view in a browser (web)."""
