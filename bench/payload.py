"""What the load posts: the form Marketing Cloud sends to an async call's ResponseAddress,
padded to 1 KB the way its result XML grows with longer status messages."""

from __future__ import annotations

from urllib.parse import urlencode

BODY_BYTES = 1024
CONTENT_TYPE = "application/x-www-form-urlencoded"


# The ten fields Marketing Cloud POSTs to an async call's ResponseAddress (the tests post them too).
MARKETING_CLOUD_FIELDS = {
    "RequestID": "5b3f2a7e-8c1d-4e2f-9a6b-1c2d3e4f5a6b",
    "ConversationID": "",
    "OverallStatusCode": "OK",
    "StatusCode": "OK",
    "StatusMessage": "",
    "ErrorCode": "",
    "RequestType": "Asynchronous",
    "ResultType": "DataExtensionObject",
    "ResultDetailXML": (
        '<Result xmlns="http://exacttarget.com/wsdl/partnerAPI"><StatusCode>OK</StatusCode>'
        "<StatusMessage>Created DataExtensionObject</StatusMessage><OrdinalID>0</OrdinalID>"
        "<NewID>0</NewID></Result>"
    ),
    "SequenceCode": "1",
}


def marketing_cloud_body(request_id: str = MARKETING_CLOUD_FIELDS["RequestID"]) -> bytes:
    """A 1 KB urlencoded form with Marketing Cloud's ten fields."""
    fields = {**MARKETING_CLOUD_FIELDS, "RequestID": request_id}
    xml = fields["ResultDetailXML"].replace("DataExtensionObject<", "DataExtensionObject {}<")
    fields["ResultDetailXML"] = xml.format("")
    pad = BODY_BYTES - len(urlencode(fields).encode())
    # Padding the message with "x" grows the encoded form one byte per character.
    fields["ResultDetailXML"] = xml.format("x" * max(pad, 0))
    return urlencode(fields).encode()
