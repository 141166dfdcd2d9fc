// The output size the server will make: the same rule as megasr.imaging.sizing (a scale, or
// a width and/or height with the other side following the aspect ratio; sides rounded half up).

const roundSide = (value) => Math.max(1, Math.floor(value + 0.5));

// {scale} or {width, height} (either may be null) for an input of width x height.
export function outputSize(request, width, height) {
  if (request.width && request.height) return [request.width, request.height];
  if (request.width) return [request.width, roundSide((height * request.width) / width)];
  if (request.height) return [roundSide((width * request.height) / height), request.height];
  return [roundSide(width * request.scale), roundSide(height * request.scale)];
}

export function describeRequest(request) {
  if (request.scale) return `${request.scale}× the input`;
  if (request.width && request.height) return `${request.width} × ${request.height} px`;
  if (request.width) return `${request.width} px wide`;
  if (request.height) return `${request.height} px high`;
  return "choose a width or a height";
}
