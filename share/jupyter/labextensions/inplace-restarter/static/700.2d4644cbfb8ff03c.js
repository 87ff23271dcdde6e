"use strict";(self.rspackChunkinplace_restarter=self.rspackChunkinplace_restarter||[]).push([[700],{19(e,r,t){var n=t(20),a=t.n(n),o=t(21),c=(t.n(o))()(a());c.push([e.id,`.jp-InplaceRestarter-job {
  border: none;
  background: none;
  color: inherit;
  font: inherit;
  padding: 0 var(--jp-ui-padding, 4px);
  cursor: pointer;
  white-space: nowrap;
}

.jp-InplaceRestarter-job:hover {
  background: var(--jp-layout-color2);
}

.jp-InplaceRestarter-job.jp-mod-warning {
  background: var(--jp-warn-color1);
  color: var(--jp-ui-inverse-font-color1);
}

.jp-InplaceRestarter-details {
  font-family: var(--jp-code-font-family);
  white-space: pre-wrap;
  margin: 0;
}

.jp-Toolbar .jp-InplaceRestarter-job {
  margin-left: var(--jp-ui-padding, 4px);
  border-radius: var(--jp-border-radius);
}
`,""]),t.d(r,{},{A:c})},21(e){e.exports=function(e){var r=[];return r.toString=function(){return this.map(function(r){var t="",n=void 0!==r[5];return r[4]&&(t+="@supports (".concat(r[4],") {")),r[2]&&(t+="@media ".concat(r[2]," {")),n&&(t+="@layer".concat(r[5].length>0?" ".concat(r[5]):""," {")),t+=e(r),n&&(t+="}"),r[2]&&(t+="}"),r[4]&&(t+="}"),t}).join("")},r.i=function(e,t,n,a,o){"string"==typeof e&&(e=[[null,e,void 0]]);var c={};if(n)for(var i=0;i<this.length;i++){var s=this[i][0];null!=s&&(c[s]=!0)}for(var p=0;p<e.length;p++){var u=[].concat(e[p]);n&&c[u[0]]||(void 0!==o&&(void 0===u[5]||(u[1]="@layer".concat(u[5].length>0?" ".concat(u[5]):""," {").concat(u[1],"}")),u[5]=o),t&&(u[2]&&(u[1]="@media ".concat(u[2]," {").concat(u[1],"}")),u[2]=t),a&&(u[4]?(u[1]="@supports (".concat(u[4],") {").concat(u[1],"}"),u[4]=a):u[4]="".concat(a)),r.push(u))}},r}},20(e){e.exports=function(e){return e[1]}},13(e){var r=[];function t(e){for(var t=-1,n=0;n<r.length;n++)if(r[n].identifier===e){t=n;break}return t}function n(e,n){for(var a={},o=[],c=0;c<e.length;c++){var i=e[c],s=n.base?i[0]+n.base:i[0],p=a[s]||0,u="".concat(s," ").concat(p);a[s]=p+1;var l=t(u),d={css:i[1],media:i[2],sourceMap:i[3],supports:i[4],layer:i[5]};if(-1!==l)r[l].references++,r[l].updater(d);else{var f=function(e,r){var t=r.domAPI(r);return t.update(e),function(r){r?(r.css!==e.css||r.media!==e.media||r.sourceMap!==e.sourceMap||r.supports!==e.supports||r.layer!==e.layer)&&t.update(e=r):t.remove()}}(d,n);n.byIndex=c,r.splice(c,0,{identifier:u,updater:f,references:1})}o.push(u)}return o}e.exports=function(e,a){var o=n(e=e||[],a=a||{});return function(e){e=e||[];for(var c=0;c<o.length;c++){var i=t(o[c]);r[i].references--}for(var s=n(e,a),p=0;p<o.length;p++){var u=t(o[p]);0===r[u].references&&(r[u].updater(),r.splice(u,1))}o=s}}},15(e){var r={};e.exports=function(e,t){var n=function(e){if(void 0===r[e]){var t=document.querySelector(e);if(window.HTMLIFrameElement&&t instanceof window.HTMLIFrameElement)try{t=t.contentDocument.head}catch(e){t=null}r[e]=t}return r[e]}(e);if(!n)throw Error("Couldn't find a style target. This probably means that the value for the 'insert' parameter is invalid.");n.appendChild(t)}},17(e){e.exports=function(e){var r=document.createElement("style");return e.setAttributes(r,e.attributes),e.insert(r,e.options),r}},16(e,r,t){e.exports=function(e){var r=t.nc;r&&e.setAttribute("nonce",r)}},14(e){e.exports=function(e){if("u"<typeof document)return{update:function(){},remove:function(){}};var r=e.insertStyleElement(e);return{update:function(t){var n,a,o;n="",t.supports&&(n+="@supports (".concat(t.supports,") {")),t.media&&(n+="@media ".concat(t.media," {")),(a=void 0!==t.layer)&&(n+="@layer".concat(t.layer.length>0?" ".concat(t.layer):""," {")),n+=t.css,a&&(n+="}"),t.media&&(n+="}"),t.supports&&(n+="}"),(o=t.sourceMap)&&"u">typeof btoa&&(n+="\n/*# sourceMappingURL=data:application/json;base64,".concat(btoa(unescape(encodeURIComponent(JSON.stringify(o))))," */")),e.styleTagTransform(n,r,e.options)},remove:function(){var e;null===(e=r).parentNode||e.parentNode.removeChild(e)}}}},18(e){e.exports=function(e,r){if(r.styleSheet)r.styleSheet.cssText=e;else{for(;r.firstChild;)r.removeChild(r.firstChild);r.appendChild(document.createTextNode(e))}}},12(e,r,t){var n=t(13),a=t.n(n),o=t(14),c=t.n(o),i=t(15),s=t.n(i),p=t(16),u=t.n(p),l=t(17),d=t.n(l),f=t(18),v=t.n(f),h=t(19),m={};m.styleTagTransform=v(),m.setAttributes=u(),m.insert=s().bind(null,"head"),m.domAPI=c(),m.insertStyleElement=d(),a()(h.A,m),h.A&&h.A.locals&&h.A.locals}}]);