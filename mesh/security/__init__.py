"""The mesh's security: keys.py (cluster keys and their files), seal.py (AEAD sealing of data), auth.py (ZAP authentication), link.py (authenticated sockets)."""
