"""Delivery: durable files from the sink to the destinations that receive them (SFTP)."""
