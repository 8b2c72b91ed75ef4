"""libvirt domain XML as small Python objects (one module per device family), and back.

``build.build_domain_xml`` turns a VirtualNode spec plus resolved inputs into the XML to
define; ``parse.parse_domain`` reads back what the reconcilers need from a live domain.
The device classes convert objects to XML and decide nothing: policy lives in build.py.
"""
