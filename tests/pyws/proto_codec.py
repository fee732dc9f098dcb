"""The `protobuf` envelope in another implementation than the provider's: Google's Python
protobuf runtime, with code that grpcio-tools' protoc generates from the shipped
proto/envelope.proto when this script starts.

One JSON command per stdin line, one JSON answer per stdout line:
  {"decode": "<base64 of a frame>"}  ->  {"fields": {<name>: <value>, ...}}  (only the set fields;
                                          body as base64), or {"error": "<why>"}
  {"encode": {<name>: <value>, ...}} ->  {"frame": "<base64>"}  (body given as base64)
The first line out is {"ready": true}.
"""
import base64
import importlib
import json
import pathlib
import sys
import tempfile

from grpc_tools import protoc

root = pathlib.Path(__file__).resolve().parents[2] / "proto"
out = tempfile.mkdtemp(prefix="proto-codec-")
code = protoc.main(["protoc", f"-I{root}", f"--python_out={out}", str(root / "envelope.proto")])
if code != 0:
    sys.exit(f"protoc failed on {root / 'envelope.proto'}: {code}")
sys.path.insert(0, out)
Envelope = importlib.import_module("envelope_pb2").Envelope

print(json.dumps({"ready": True}), flush=True)
for line in sys.stdin:
    command = json.loads(line)
    if "decode" in command:
        envelope = Envelope()
        try:
            envelope.ParseFromString(base64.b64decode(command["decode"]))
        except Exception as e:  # the answer says why
            print(json.dumps({"error": str(e)}), flush=True)
            continue
        fields = {}
        for field, value in envelope.ListFields():
            fields[field.name] = base64.b64encode(value).decode() if field.name == "body" else value
        print(json.dumps({"fields": fields}), flush=True)
    else:
        fields = dict(command["encode"])
        if "body" in fields:
            fields["body"] = base64.b64decode(fields["body"])
        frame = Envelope(**fields).SerializeToString()
        print(json.dumps({"frame": base64.b64encode(frame).decode()}), flush=True)
