"""Published ports (``docker run -p`` / ``-P``): parsing, held host ports, the manager."""
