"""A SAML 2.0 identity provider for the sign-in tests (tests/tests/sso.rs).

It answers one AuthnRequest the way an IdP's HTTP-POST binding does: it inflates the request the
gateway redirected the browser with, writes a Response with one Assertion for the user, and signs
the assertion with xmlsec1 (libxmlsec1, the XML-DSig implementation most SAML libraries build on)
using the IdP's key. Prints the base64 SAMLResponse and the ACS URL to POST it to.

Variations for the attack tests: --audience, --recipient, --lifetime (seconds, negative for an
expired assertion), --in-response-to, --unsigned, --tamper (change the user after signing) and
--wrap (a signature-wrapping attack: the signed assertion moved aside, a forged one in its place).

  python3 idp.py --key K --cert C --issuer I --request SAMLREQUEST --user erin --groups eu-sales
"""
import argparse
import base64
import datetime
import os
import re
import subprocess
import sys
import tempfile
import uuid
import zlib
from urllib.parse import unquote
from xml.etree import ElementTree
from xml.sax.saxutils import escape, quoteattr

PROTOCOL = "urn:oasis:names:tc:SAML:2.0:protocol"


def iso(t):
    return t.strftime("%Y-%m-%dT%H:%M:%SZ")


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--key", required=True)
    p.add_argument("--cert", required=True)
    p.add_argument("--issuer", required=True)
    p.add_argument("--request", required=True, help="the SAMLRequest query parameter")
    p.add_argument("--user", required=True)
    p.add_argument("--groups", default="")
    p.add_argument("--audience")
    p.add_argument("--recipient")
    p.add_argument("--lifetime", type=int, default=300)
    p.add_argument("--in-response-to")
    p.add_argument("--unsigned", action="store_true")
    p.add_argument("--tamper")
    p.add_argument("--wrap")
    a = p.parse_args()

    request = ElementTree.fromstring(zlib.decompress(base64.b64decode(unquote(a.request)), -15))
    assert request.tag == f"{{{PROTOCOL}}}AuthnRequest", request.tag
    request_id = request.get("ID")
    acs = request.get("AssertionConsumerServiceURL")
    sp = request.find("{urn:oasis:names:tc:SAML:2.0:assertion}Issuer").text

    now = datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0)
    until = now + datetime.timedelta(seconds=a.lifetime)
    in_response_to = a.in_response_to or request_id
    audience = a.audience or sp
    recipient = a.recipient or acs
    assertion_id = "_" + uuid.uuid4().hex
    groups = "".join(
        f"<saml:AttributeValue>{escape(g)}</saml:AttributeValue>" for g in a.groups.split(",") if g
    )
    signature = "" if a.unsigned else f"""
    <ds:Signature xmlns:ds="http://www.w3.org/2000/09/xmldsig#">
      <ds:SignedInfo>
        <ds:CanonicalizationMethod Algorithm="http://www.w3.org/2001/10/xml-exc-c14n#"/>
        <ds:SignatureMethod Algorithm="http://www.w3.org/2001/04/xmldsig-more#rsa-sha256"/>
        <ds:Reference URI="#{assertion_id}">
          <ds:Transforms>
            <ds:Transform Algorithm="http://www.w3.org/2000/09/xmldsig#enveloped-signature"/>
            <ds:Transform Algorithm="http://www.w3.org/2001/10/xml-exc-c14n#"/>
          </ds:Transforms>
          <ds:DigestMethod Algorithm="http://www.w3.org/2001/04/xmlenc#sha256"/>
          <ds:DigestValue/>
        </ds:Reference>
      </ds:SignedInfo>
      <ds:SignatureValue/>
      <ds:KeyInfo><ds:X509Data/></ds:KeyInfo>
    </ds:Signature>"""
    assertion = f"""<saml:Assertion xmlns:saml="urn:oasis:names:tc:SAML:2.0:assertion" ID="{assertion_id}" Version="2.0" IssueInstant="{iso(now)}">
    <saml:Issuer>{escape(a.issuer)}</saml:Issuer>{signature}
    <saml:Subject>
      <saml:NameID Format="urn:oasis:names:tc:SAML:1.1:nameid-format:unspecified">{escape(a.user)}</saml:NameID>
      <saml:SubjectConfirmation Method="urn:oasis:names:tc:SAML:2.0:cm:bearer">
        <saml:SubjectConfirmationData NotOnOrAfter="{iso(until)}" Recipient={quoteattr(recipient)} InResponseTo={quoteattr(in_response_to)}/>
      </saml:SubjectConfirmation>
    </saml:Subject>
    <saml:Conditions NotBefore="{iso(now - datetime.timedelta(seconds=5))}" NotOnOrAfter="{iso(until)}">
      <saml:AudienceRestriction><saml:Audience>{escape(audience)}</saml:Audience></saml:AudienceRestriction>
    </saml:Conditions>
    <saml:AuthnStatement AuthnInstant="{iso(now)}"><saml:AuthnContext><saml:AuthnContextClassRef>urn:oasis:names:tc:SAML:2.0:ac:classes:Password</saml:AuthnContextClassRef></saml:AuthnContext></saml:AuthnStatement>
    <saml:AttributeStatement><saml:Attribute Name="groups">{groups}</saml:Attribute></saml:AttributeStatement>
  </saml:Assertion>"""
    response = f"""<?xml version="1.0" encoding="UTF-8"?>
<samlp:Response xmlns:samlp="{PROTOCOL}" xmlns:saml="urn:oasis:names:tc:SAML:2.0:assertion" ID="_{uuid.uuid4().hex}" Version="2.0" IssueInstant="{iso(now)}" Destination={quoteattr(acs)} InResponseTo={quoteattr(in_response_to)}>
  <saml:Issuer>{escape(a.issuer)}</saml:Issuer>
  <samlp:Status><samlp:StatusCode Value="urn:oasis:names:tc:SAML:2.0:status:Success"/></samlp:Status>
  {assertion}
</samlp:Response>
"""
    if not a.unsigned:
        with tempfile.TemporaryDirectory() as tmp:
            src, out = os.path.join(tmp, "in.xml"), os.path.join(tmp, "out.xml")
            with open(src, "w") as f:
                f.write(response)
            subprocess.run(
                ["xmlsec1", "--sign", "--privkey-pem", f"{a.key},{a.cert}",
                 "--id-attr:ID", "urn:oasis:names:tc:SAML:2.0:assertion:Assertion",
                 "--output", out, src],
                check=True, capture_output=True,
            )
            with open(out) as f:
                response = f.read()
    if a.tamper:
        response = response.replace(f">{escape(a.user)}</saml:NameID>", f">{escape(a.tamper)}</saml:NameID>")
    if a.wrap:
        # The signed assertion goes into an Extensions element; a forged copy for another user
        # (same ID, no signature) takes its place.
        signed = re.search(r"<saml:Assertion .*?</saml:Assertion>", response, re.S).group(0)
        forged = re.sub(r"<ds:Signature .*?</ds:Signature>", "", signed, flags=re.S)
        forged = forged.replace(f">{escape(a.user)}</saml:NameID>", f">{escape(a.wrap)}</saml:NameID>")
        response = response.replace(
            signed, f"<samlp:Extensions>{signed}</samlp:Extensions>{forged}"
        )
    sys.stdout.write(base64.b64encode(response.encode()).decode() + "\n" + acs + "\n")


if __name__ == "__main__":
    main()
