// Module ids by order of use: the builder's default (ids hashed from module
// names) hashes the absolute path of the checkout into remoteEntry.js.
module.exports = { optimization: { moduleIds: 'natural' } };
