"""The dashboard's static assets (``static/``), shipped in the package: sites often have no
internet, so nothing is fetched from a CDN."""
