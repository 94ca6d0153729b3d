"""The bare servers the gateway is compared with, one module each, run as processes."""
