"""The deployable service: the twistd plugin's service and the status site."""
