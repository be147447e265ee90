"""What the load posts: the form Marketing Cloud sends to an async call's ResponseAddress,
padded to 1 KB the way its result XML grows with longer status messages."""

from __future__ import annotations

from urllib.parse import urlencode

BODY_BYTES = 1024
CONTENT_TYPE = "application/x-www-form-urlencoded"


def marketing_cloud_body(request_id: str = "5b3f2a7e-8c1d-4e2f-9a6b-1c2d3e4f5a6b") -> bytes:
    """A 1 KB urlencoded form with Marketing Cloud's ten fields."""
    fields = {
        "RequestID": request_id,
        "ConversationID": "",
        "OverallStatusCode": "OK",
        "StatusCode": "OK",
        "StatusMessage": "",
        "ErrorCode": "",
        "RequestType": "Asynchronous",
        "ResultType": "DataExtensionObject",
        "ResultDetailXML": "",
        "SequenceCode": "1",
    }
    xml = (
        '<Result xmlns="http://exacttarget.com/wsdl/partnerAPI"><StatusCode>OK</StatusCode>'
        "<StatusMessage>Created DataExtensionObject {}</StatusMessage><OrdinalID>0</OrdinalID>"
        "<NewID>0</NewID></Result>"
    )
    fields["ResultDetailXML"] = xml.format("")
    pad = BODY_BYTES - len(urlencode(fields).encode())
    # Padding the message with "x" grows the encoded form one byte per character.
    fields["ResultDetailXML"] = xml.format("x" * max(pad, 0))
    body = urlencode(fields).encode()
    return body
