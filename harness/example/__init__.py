"""The seed's example: an LSTM trained to generate a fixed sequence through any implementation."""
