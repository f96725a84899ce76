"""The networks whose features the losses compare: VGG-19/16/13/11, AlexNet and NIN
(vgg), their weights from Caffe files (caffemodel) and torchvision's cache (hub)."""
