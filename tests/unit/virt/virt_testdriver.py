"""Test-driver documents shared by the virt unit tests."""

from __future__ import annotations

NODE_XML = """<node>
  <cpu><mhz>2000</mhz><model>x86_64</model><nodes>1</nodes><sockets>1</sockets>
       <cores>4</cores><threads>1</threads></cpu>
  <memory>4194304</memory>
</node>
"""

DOMAIN_XML = """<domain type='test'>
  <name>{name}</name>
  <memory unit='MiB'>64</memory>
  <vcpu>1</vcpu>
  {metadata}
  <os><type>hvm</type></os>
  <devices>
    <graphics type='vnc' port='-1' autoport='yes'/>
    <serial type='pty'/>
  </devices>
</domain>"""

OWNER = (
    '<metadata><kvmfleet:node xmlns:kvmfleet="https://kvmfleet.io/xmlns/domain/1.0" '
    'uid="0b0c1d2e-1111-2222-3333-444455556666" namespace="lab" name="{name}">'
    '<kvmfleet:serial port="0" speed="115200"/></kvmfleet:node></metadata>'
)


def domain_xml(name: str, owned: bool = True) -> str:
    return DOMAIN_XML.format(name=name, metadata=OWNER.format(name=name) if owned else "")
