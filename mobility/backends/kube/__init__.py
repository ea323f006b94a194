"""The Kubernetes backends: one JSON client (``client``), the names written on objects
(``objects``), KubeFed membership (``membership``) and placement (``kubefed``), Karmada
(``karmada``) and the NSM objects (``nsm``). No module here imports another backend's module
for a shared name: those live in ``client`` and ``objects``."""
