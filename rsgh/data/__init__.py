"""Images to features to a retrieval split: archives, MNIST, CIFAR-10, Caltech-256, GIST, scaling."""
