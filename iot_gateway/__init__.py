"""The MQTT gateway: sensors and vehicles in, checked, kept as live state and history, on the bus."""
