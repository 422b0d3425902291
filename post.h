HTTP/1.1 202 Accepted
location: /v2/bench/blob/blobs/uploads/d329b3ef90c3421ba0736db6aa49305e
range: 0-0
docker-upload-uuid: d329b3ef90c3421ba0736db6aa49305e
docker-distribution-api-version: registry/2.0
content-length: 0
date: Mon, 23 Nov 2026 09:43:27 GMT

