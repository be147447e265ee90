"""What the load posts: the form Marketing Cloud sends to an async call's ResponseAddress,
padded to 1 KB the way its result XML grows with longer status messages."""

from __future__ import annotations

from urllib.parse import urlencode

import orjson

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


JSON_CONTENT_TYPE = "application/json"

# A small contract for the JSON body: what a typical async API's completion notice promises.
JSON_SCHEMA = {
    "type": "object",
    "required": ["id", "status", "result"],
    "properties": {
        "id": {"type": "string", "minLength": 1},
        "status": {"enum": ["succeeded", "failed"]},
        "result": {
            "type": "object",
            "required": ["rows"],
            "properties": {"rows": {"type": "integer", "minimum": 0}, "message": {"type": "string"}},
        },
    },
}


def json_body(request_id: str = MARKETING_CLOUD_FIELDS["RequestID"]) -> bytes:
    """A 1 KB JSON completion notice that satisfies JSON_SCHEMA (and whose `status` the
    built-in JSON rule reads as ok)."""
    document = {"id": request_id, "status": "succeeded", "result": {"rows": 1, "message": ""}}
    pad = BODY_BYTES - len(orjson.dumps(document))
    document["result"] = {"rows": 1, "message": "x" * max(pad, 0)}
    return orjson.dumps(document)
