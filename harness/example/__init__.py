"""The Caffe LSTM's example: an LSTM trained to generate a fixed sequence through any implementation."""
