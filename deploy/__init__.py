"""Running weightgate for real (containers, Kubernetes, Ray) and locally (``deploy.local``)."""
